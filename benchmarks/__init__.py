"""Side-by-side speed comparisons of xpnn against PyTorch CPU (never run by the tests)."""
