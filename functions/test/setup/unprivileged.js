process.env.TEST_SANDBOX_PATH = 'warm';
process.env.TEST_UNPRIVILEGED = '1';
