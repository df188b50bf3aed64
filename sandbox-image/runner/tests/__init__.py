"""Unit tests of the runner's own Python (no sandbox, no root). From the repository root:

    /usr/bin/python3 -B -m unittest discover -s sandbox-image/runner/tests -t sandbox-image/runner

functions/test/runner.python.test.ts runs them as part of `npm test`.
"""
