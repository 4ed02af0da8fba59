"""Host facts: probes (how to read) plus pure parsers (what it means), gathered into a snapshot."""
