process.env.TEST_SANDBOX_PATH = 'warm';
