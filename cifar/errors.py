class UserError(Exception):
    """A mistake the user can fix (config, data, checkpoint, hardware).

    The entry points print its message as one line and exit non-zero, with no traceback:
    so the message must say what is wrong and how to fix it.
    """


def refuse_broken(rules: list[tuple[bool, str]]) -> None:
    """Each rule is (holds, the line that says what to do if it does not): the first that does not hold is raised."""
    for ok, message in rules:
        if not ok:
            raise UserError(message)


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (libraries' messages run to many), or its type's name if it has none."""
    message = str(error).strip()
    return message.splitlines()[0] if message else type(error).__name__
