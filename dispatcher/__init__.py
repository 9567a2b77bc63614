"""The domain: geo, candidate search and ranking, offer waves, shift rules, audiences."""
