"""The one exception type users see: its message is a single line naming the file or key."""


class DetbenchError(Exception):
    """A problem with the user's input (config, dataset, weights file...).

    The message must be one line that names the file or config key and says what is wrong,
    e.g. ``"data/Annotations/x.xml: not well-formed XML (line 3, column 1)"``.
    """
