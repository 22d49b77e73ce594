"""Builds tables, statistics, plots and the HTML page from result files alone (no torch)."""
