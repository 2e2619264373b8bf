"""The checks: the catalogue (one source for checks and alert rules), the engine over sampled-step snapshots,
findings, and their delivery to the log and a webhook. Pure Python over host values: no torch here."""
