"""Order analysis: performance gap, CER, order advantage, interference (Definitions 2-6 of 003)."""
