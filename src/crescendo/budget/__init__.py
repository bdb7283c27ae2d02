"""Compression budgets: cost accounting (BOPs, storage bits, equivalent bits, compression ratios) and
samplers of per-layer compression ratios under a budget.

Everything here is pure arithmetic on plain numbers: no models, no tensors, no global state.
"""
