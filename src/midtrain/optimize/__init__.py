"""The mix optimiser: fit metric responses to mixture weights, propose the next mix."""
