"""agenttasks: hand work to AI agents and get it back."""

__version__ = "0.1.0"
