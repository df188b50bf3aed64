/** Tests run against the compiled service over real HTTP; ts-jest only compiles the test files. */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/functions/test'],
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: '<rootDir>/functions/tsconfig.test.json' }] },
  testTimeout: 60000,
  maxWorkers: 1,
};
