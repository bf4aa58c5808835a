"""Screens: the main chat screen and the modal help and conversation-list screens."""
