//! Signals become events on the agent's channel: SIGHUP reloads, SIGTERM and SIGINT
//! stop cleanly. signal-hook's iterator runs the handlers' work on a normal thread.

use crate::run::Event;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::sync::mpsc::Sender;

pub fn forward(tx: Sender<Event>) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGHUP, SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let event = if sig == SIGHUP {
                    Event::Reload
                } else {
                    Event::Stop
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}
