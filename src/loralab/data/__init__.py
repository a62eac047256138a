"""Data lab: records, ingest, clean, corrupt, structure, render, data cards."""
