//! A stateful handler end to end: a line protocol where a client must log in before it can
//! talk. The session handler keeps per-connection state in `&mut self` and runs on a
//! blocking executor (as a handler calling a synchronous database would); the client side
//! is a Tethernet `Client` with its own pipeline.

mod common;

use std::time::Duration;

use common::{default_server, start};
use tethernet::codec::LineCodec;
use tethernet::{Client, Context, Executor, Handler, Pipeline, Result};
use tokio::sync::mpsc;

/// Server side: `LOGIN <name>` first, then `SAY <text>` and `COUNT`; `QUIT` closes.
#[derive(Default)]
struct Session {
    user: Option<String>,
    said: usize,
}

impl Handler<String, String> for Session {
    type Next = String;

    async fn active(&mut self, ctx: &mut Context<'_, String, String>) -> Result<()> {
        ctx.write("HELLO please log in".to_owned()).await
    }

    async fn read(&mut self, ctx: &mut Context<'_, String, String>, line: String) -> Result<()> {
        // Stands in for a synchronous lookup on the blocking executor.
        std::thread::sleep(Duration::from_millis(1));
        let (command, argument) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let reply = match (command, &self.user) {
            ("LOGIN", None) if !argument.is_empty() => {
                self.user = Some(argument.to_owned());
                format!("WELCOME {argument}")
            }
            ("LOGIN", Some(user)) => format!("ERR already logged in as {user}"),
            (_, None) => "ERR log in first".to_owned(),
            ("SAY", Some(user)) => {
                self.said += 1;
                format!("{user}: {argument}")
            }
            ("COUNT", Some(user)) => format!("{user} said {} lines", self.said),
            ("QUIT", Some(user)) => {
                ctx.write(format!("BYE {user}")).await?;
                ctx.close();
                return Ok(());
            }
            _ => format!("ERR unknown command {command}"),
        };
        ctx.write(reply).await
    }
}

/// Client side: hands every line it receives to the test.
struct Collect(mpsc::Sender<String>);

impl Handler<String, String> for Collect {
    type Next = String;
    async fn read(&mut self, _ctx: &mut Context<'_, String, String>, line: String) -> Result<()> {
        self.0.send(line).await.map_err(tethernet::Error::other)
    }
}

#[tokio::test]
async fn login_then_session_keeps_state_per_connection() {
    let database = Executor::builder("database")
        .threads(2)
        .blocking()
        .build()
        .unwrap();
    let server = start(default_server(), move || {
        Pipeline::builder(LineCodec::new(256))
            .on(&database, Session::default())
            .build()
    })
    .await;

    let client = Client::builder().build().unwrap();
    let (alice_tx, mut alice) = mpsc::channel(16);
    let (bob_tx, mut bob) = mpsc::channel(16);
    let alice_conn = client
        .connect(
            server.addr,
            Pipeline::builder(LineCodec::new(256))
                .handler(Collect(alice_tx))
                .build(),
        )
        .await
        .unwrap();
    let bob_conn = client
        .connect(
            server.addr,
            Pipeline::builder(LineCodec::new(256))
                .handler(Collect(bob_tx))
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(alice.recv().await.unwrap(), "HELLO please log in");
    assert_eq!(bob.recv().await.unwrap(), "HELLO please log in");

    let a = alice_conn.channel();
    let b = bob_conn.channel();
    a.write("SAY too early".into()).await.unwrap();
    assert_eq!(alice.recv().await.unwrap(), "ERR log in first");
    a.write("LOGIN alice".into()).await.unwrap();
    b.write("LOGIN bob".into()).await.unwrap();
    assert_eq!(alice.recv().await.unwrap(), "WELCOME alice");
    assert_eq!(bob.recv().await.unwrap(), "WELCOME bob");
    for i in 0..5 {
        a.write(format!("SAY hello {i}")).await.unwrap();
    }
    b.write("SAY hi".into()).await.unwrap();
    for i in 0..5 {
        assert_eq!(alice.recv().await.unwrap(), format!("alice: hello {i}"));
    }
    assert_eq!(bob.recv().await.unwrap(), "bob: hi");
    a.write("LOGIN mallory".into()).await.unwrap();
    assert_eq!(
        alice.recv().await.unwrap(),
        "ERR already logged in as alice"
    );
    a.write("COUNT".into()).await.unwrap();
    b.write("COUNT".into()).await.unwrap();
    assert_eq!(alice.recv().await.unwrap(), "alice said 5 lines");
    assert_eq!(bob.recv().await.unwrap(), "bob said 1 lines");

    // QUIT: the server answers, then closes; the client sees the end of the connection.
    a.write("QUIT".into()).await.unwrap();
    assert_eq!(alice.recv().await.unwrap(), "BYE alice");
    alice_conn.closed().await;
    assert!(alice.recv().await.is_none(), "no lines after BYE");

    // Bob's session is untouched by Alice leaving.
    b.write("COUNT".into()).await.unwrap();
    assert_eq!(bob.recv().await.unwrap(), "bob said 1 lines");
    bob_conn.close().await;
    server.stop().await;
}
