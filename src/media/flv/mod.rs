//! FLV clips.
