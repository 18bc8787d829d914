//! Plugins (being written).
