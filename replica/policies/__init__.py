"""Scheduling policies: plain classes over request state and a Clock."""
