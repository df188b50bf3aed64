process.env.TEST_SANDBOX_PATH = 'cold';
