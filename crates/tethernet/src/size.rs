//! How many bytes a message holds, so queues can be capped in bytes.
//!
//! Every queue in Tethernet is capped in bytes, not in messages: a cap of 1,000 messages
//! says nothing about memory when one message may be 64 bytes and the next 1 MiB. Messages
//! that cross a queue (to a business executor, or to a connection's outbound side from
//! another task) therefore implement [`MessageSize`]. The figure is *measured* from the
//! value — its inline size plus the heap bytes it owns — never guessed.

use bytes::{Bytes, BytesMut};

/// The number of bytes a message holds: its own size plus the heap memory it owns.
///
/// Implementations must be cheap (they run once per queued message) and must not
/// under-count: a queue cap is only as good as these figures.
///
/// ```
/// use tethernet::MessageSize;
///
/// struct Chat { room: String, body: String }
///
/// impl MessageSize for Chat {
///     fn message_size(&self) -> usize {
///         std::mem::size_of::<Self>() + self.room.capacity() + self.body.capacity()
///     }
/// }
/// let m = Chat { room: "lobby".into(), body: "hello".into() };
/// assert!(m.message_size() >= 10);
/// ```
pub trait MessageSize {
    /// Bytes held by this message, including `size_of::<Self>()`.
    fn message_size(&self) -> usize;

    /// Bytes to charge the connection for this message while it waits (in a queue,
    /// fired, or waiting for room), when part of what it holds is already charged
    /// elsewhere: a [`Frame`](crate::Frame) cut from a read buffer is charged there, at
    /// the buffer's full capacity, so only its own struct is charged again. Queue caps
    /// still use [`message_size`](MessageSize::message_size). Defaults to it.
    fn charged_size(&self) -> usize {
        self.message_size()
    }
}

impl MessageSize for Bytes {
    fn message_size(&self) -> usize {
        std::mem::size_of::<Self>() + self.len()
    }
}

impl MessageSize for BytesMut {
    fn message_size(&self) -> usize {
        std::mem::size_of::<Self>() + self.capacity()
    }
}

impl MessageSize for String {
    fn message_size(&self) -> usize {
        std::mem::size_of::<Self>() + self.capacity()
    }
}

/// Counted in full for every holder: a message shared by many queues (a broadcast) is
/// charged to each, so every queue's cap stays a true upper bound.
impl MessageSize for std::sync::Arc<str> {
    fn message_size(&self) -> usize {
        std::mem::size_of::<Self>() + self.len()
    }
}

/// Counted in full for every holder (see `Arc<str>`).
impl MessageSize for std::sync::Arc<[u8]> {
    fn message_size(&self) -> usize {
        std::mem::size_of::<Self>() + self.len()
    }
}

impl MessageSize for &'static str {
    fn message_size(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

impl MessageSize for Vec<u8> {
    fn message_size(&self) -> usize {
        std::mem::size_of::<Self>() + self.capacity()
    }
}

impl<T: MessageSize> MessageSize for Box<T> {
    fn message_size(&self) -> usize {
        std::mem::size_of::<Self>() + (**self).message_size()
    }
}

impl<T: MessageSize> MessageSize for Option<T> {
    fn message_size(&self) -> usize {
        match self {
            Some(value) => {
                std::mem::size_of::<Self>() - std::mem::size_of::<T>() + value.message_size()
            }
            None => std::mem::size_of::<Self>(),
        }
    }
}

impl<A: MessageSize, B: MessageSize> MessageSize for (A, B) {
    fn message_size(&self) -> usize {
        self.0.message_size() + self.1.message_size()
    }
}

macro_rules! plain_size {
    ($($t:ty),*) => {$(
        impl MessageSize for $t {
            fn message_size(&self) -> usize {
                std::mem::size_of::<Self>()
            }
        }
    )*};
}

plain_size!(
    (),
    bool,
    char,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64
);

#[cfg(feature = "json")]
impl MessageSize for serde_json::Value {
    fn message_size(&self) -> usize {
        use serde_json::Value;
        std::mem::size_of::<Self>()
            + match self {
                Value::Null | Value::Bool(_) | Value::Number(_) => 0,
                Value::String(s) => s.capacity(),
                Value::Array(items) => items.iter().map(MessageSize::message_size).sum(),
                Value::Object(map) => map
                    .iter()
                    .map(|(key, value)| {
                        std::mem::size_of::<String>() + key.capacity() + value.message_size()
                    })
                    .sum(),
            }
    }
}
