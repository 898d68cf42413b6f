"""--workers N: one model owner process and N API processes (docs/ARCHITECTURE.md)."""
