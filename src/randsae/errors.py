"""The one exception type for mistakes a user can fix.

The CLI prints a `UserError` as a single line (the problem, then the fix) and exits with code 2;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input: names what is wrong and how to fix it."""

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem}. {fix}")
        self.problem = problem
        self.fix = fix
