/**
 * ESLint (flat config): `npm run lint` runs it over the service, the tests, bench/ and scripts/.
 * ESLint's recommended rules and typescript-eslint's recommended rules everywhere; the type-aware
 * rules (floating promises, misused promises, unsafe `any`) on the service only (functions/src,
 * through tsconfig.json), where they cost about a second. On the tests they would add ten seconds
 * and hundreds of no-unsafe-* findings on parsed response bodies, which the tests read as `any` on
 * purpose (see below). Formatting is Prettier's job (.prettierrc.json), not ESLint's.
 */
const js = require('@eslint/js');
const { defineConfig, globalIgnores } = require('eslint/config');
const globals = require('globals');
const tseslint = require('typescript-eslint');

module.exports = defineConfig(
  globalIgnores(['functions/build/', 'coverage/', 'bench/results/']),
  js.configs.recommended,
  tseslint.configs.recommended,
  {
    // Plain .js files (this file, jest.config.js, bench/, scripts/, test set-up) are CommonJS run by Node.
    languageOptions: { ecmaVersion: 2022, sourceType: 'commonjs', globals: { ...globals.node } },
    rules: {
      // A leading underscore marks a parameter or binding kept on purpose (a handler's fixed
      // signature, `const { $id: _id, ...rest }` to drop a key).
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrorsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_', ignoreRestSiblings: true },
      ],
    },
  },
  {
    files: ['**/*.js'],
    rules: {
      // require() is how CommonJS files import; the rule is meant for TypeScript sources.
      '@typescript-eslint/no-require-imports': 'off',
    },
  },
  { files: ['**/*.ts'], languageOptions: { sourceType: 'module' } },
  {
    files: ['functions/src/**/*.ts'],
    extends: [tseslint.configs.recommendedTypeChecked],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: __dirname } },
    rules: {
      // `async` without `await` is deliberate here: it implements Promise-returning interfaces
      // (route handlers, the warm boundary's placeChild, cgroup freeze callbacks) and turns a
      // synchronous throw into a rejection.
      '@typescript-eslint/require-await': 'off',
    },
  },
  {
    files: ['functions/test/**'],
    languageOptions: { globals: { ...globals.jest } },
    rules: {
      // Tests read parsed JSON response bodies and jest matchers' results as `any` on purpose.
      '@typescript-eslint/no-explicit-any': 'off',
    },
  },
);
