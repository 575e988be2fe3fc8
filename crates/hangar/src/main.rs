//! `hangar`: the command-line edge. Parses arguments and wires the library crates;
//! no algorithms live here.

fn main() {}
