"""Background work on RQ: outbound WeChat messages, reminders, offer waves, broadcasts."""
