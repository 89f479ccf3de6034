"""The scheduler and piece picker: pure state machines, time passed in."""
