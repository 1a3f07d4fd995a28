"""Data sets: validation (datasets), sources (readers), formats, problems, chat token masks, lengths."""
