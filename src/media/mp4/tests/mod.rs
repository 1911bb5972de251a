//! The MP4 library's own tests: synthetic files built byte by byte and read back by a
//! reference reader, a naive model of the trim rules, properties of `Presented`, and seeded
//! mutation fuzzing of everything a hostile file reaches.

mod builder;
mod faststart;
mod fuzz;
mod props;
mod trim;
