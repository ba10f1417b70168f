"""trionet chaos soak: a long run under injected faults, with a report."""
