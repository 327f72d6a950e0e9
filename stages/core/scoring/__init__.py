"""Answer checkers and the online reward."""
