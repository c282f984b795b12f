//! MessagePack codec (placeholder; being written).
