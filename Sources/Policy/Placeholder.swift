// Policy: pure decisions.
