"""Adapters for the distillation frameworks' own label layouts: safe loading, SRe2L/CDA/LPLD,
LPQLD and FKD import and export."""
