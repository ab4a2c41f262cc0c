"""Shared building blocks of the pure cores: errors, deadlines, the drive step."""
