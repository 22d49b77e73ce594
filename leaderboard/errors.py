"""The leaderboard's one error type: unusable result files or options (the CLI prints it in one line, exit 2)."""


class LeaderboardInputError(ValueError):
    """A records file, run folder, column or option that cannot be used; the message names the file and column."""
