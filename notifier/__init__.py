"""The notifier worker (see issue: notifier)."""
