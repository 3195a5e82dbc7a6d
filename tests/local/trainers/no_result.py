"""Breaks the result: trains, says so in a log line, exits 0 and reports nothing."""

print("training done")
