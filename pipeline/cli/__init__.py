"""The command line: every `zsad` sub-command's handler, and every print."""
