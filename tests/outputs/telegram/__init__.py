"""Tests of app/outputs/telegram/."""
