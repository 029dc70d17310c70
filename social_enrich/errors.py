"""The one base of the errors that are the user's to fix: a run that meets one fails with its message
alone (one readable line, see assets.py), and the traceback goes to the debug log."""


class SocialEnrichError(Exception):
    """A problem with the user's configuration, data or endpoint; the message names it and the remedy."""
