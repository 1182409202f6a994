"""pictory-archiver: back up a Pictory AI Studio library to your own storage."""

__version__ = "0.1.0"
