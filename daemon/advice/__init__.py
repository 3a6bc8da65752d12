"""Advice: the toolchain probe, the suggestion rules, bench evidence, and tuning changes."""
