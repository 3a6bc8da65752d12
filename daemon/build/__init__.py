"""Building: one cargo run in its own process group, the configurations it is run with, and where its time went."""
