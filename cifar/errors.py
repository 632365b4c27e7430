class UserError(Exception):
    """A mistake the user can fix (config, data, checkpoint, hardware).

    The entry points print its message as one line and exit non-zero, with no traceback:
    so the message must say what is wrong and how to fix it.
    """
