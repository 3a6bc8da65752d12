"""Building: one cargo run in its own process group, the configurations it runs with,
and where its time went."""
