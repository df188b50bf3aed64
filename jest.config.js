/**
 * Tests run against the compiled service over real HTTP; ts-jest only compiles the test files.
 * Three projects: "cold" runs every test with a new interpreter per run; "warm" runs the execution
 * and attack suites again on the warm path (pre-forked children from the zygote); "unprivileged"
 * runs the execution suite in a simulated unprivileged container.
 */
const common = {
  testEnvironment: 'node',
  roots: ['<rootDir>/functions/test'],
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: '<rootDir>/functions/tsconfig.test.json' }] },
};

module.exports = {
  reporters: ['default', '<rootDir>/functions/test/setup/summaryReporter.js'],
  testTimeout: 60000,
  maxWorkers: 1,
  projects: [
    { ...common, displayName: 'cold', setupFiles: ['<rootDir>/functions/test/setup/cold.js'] },
    {
      // The whole /execute suite again, with every service run as `docker run` without
      // --privileged would run it (no CAP_SYS_ADMIN, Docker's seccomp profile, read-only
      // cgroups): `auto` must choose seccomp mode, warm path, and everything must still hold.
      ...common,
      displayName: 'unprivileged',
      setupFiles: ['<rootDir>/functions/test/setup/unprivileged.js'],
      testMatch: ['<rootDir>/functions/test/execute.test.ts'],
    },
    {
      ...common,
      displayName: 'warm',
      setupFiles: ['<rootDir>/functions/test/setup/warm.js'],
      testMatch: [
        '<rootDir>/functions/test/execute.test.ts',
        '<rootDir>/functions/test/files.test.ts',
        '<rootDir>/functions/test/operations.test.ts',
        '<rootDir>/functions/test/warm.test.ts',
        '<rootDir>/functions/test/security/**/*.test.ts',
      ],
    },
  ],
};
