//! Drawing the [`App`] into a ratatui frame: a pure function of the state and the frame's size.
//!
//! ```text
//! Groups      │ friends · alice, bob
//! > friends   │ ── Sat 2026-12-05 ──
//!   work   (2)│ 09:14 <bob> hi alice
//!             │ 09:15 <alice> [photo.jpg 1.2 MiB #1]
//! INCOMING CALL from bob in friends: Alt-A or /answer, Alt-D or /decline   (when ringing)
//! upload 45% (1.2 MiB of 2.6 MiB)                                       (while transferring)
//! > typed text
//!  alice @ 127.0.0.1:7443 │ relay connected │ 1 pending │ F1 help
//! ```

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize as _};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};
use unicode_width::{UnicodeWidthChar as _, UnicodeWidthStr as _};

use crate::tui::app::{App, Entry, EntryKind, HELP};

/// Where each part of the screen goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Areas {
    /// The group list (left).
    pub(crate) groups: Rect,
    /// The message pane (right), its first row the group's title.
    pub(crate) pane: Rect,
    /// The call banner, while there is a call.
    pub(crate) banner: Option<Rect>,
    /// The transfers' progress, while there are any.
    pub(crate) transfers: Option<Rect>,
    /// The input line.
    pub(crate) input: Rect,
    /// The status line (bottom).
    pub(crate) status: Rect,
}

/// Splits `area` for `app`'s state.
pub(crate) fn layout(app: &App, area: Rect) -> Areas {
    let banner = u16::from(app.call.is_some());
    let transfers = u16::from(!app.transfers.is_empty());
    let [main, banner_area, transfers_area, input, status] = Layout::vertical([
        Constraint::Min(1),
        Constraint::Length(banner),
        Constraint::Length(transfers),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let list_width = (area.width / 4).clamp(12, 24).min(area.width);
    let [groups, pane] =
        Layout::horizontal([Constraint::Length(list_width), Constraint::Min(1)]).areas(main);
    Areas {
        groups,
        pane,
        banner: (banner > 0).then_some(banner_area),
        transfers: (transfers > 0).then_some(transfers_area),
        input,
        status,
    }
}

/// How many lines the shown group's pane can scroll up in `pane`.
pub(crate) fn max_scroll(app: &App, pane: Rect) -> usize {
    let rows = usize::from(pane.height.saturating_sub(1));
    let total = message_paragraph(app).line_count(pane.width);
    total.saturating_sub(rows)
}

/// Draws the whole screen.
pub fn render(app: &App, frame: &mut Frame) {
    let area = frame.area();
    let areas = layout(app, area);
    render_groups(app, frame, areas.groups);
    render_pane(app, frame, areas.pane);
    if let Some(banner) = areas.banner {
        render_banner(app, frame, banner);
    }
    if let Some(transfers) = areas.transfers {
        render_transfers(app, frame, transfers);
    }
    render_input(app, frame, areas.input);
    render_status(app, frame, areas.status);
    if app.help {
        render_help(frame, areas.pane.union(areas.groups));
    }
}

fn render_groups(app: &App, frame: &mut Frame, area: Rect) {
    let block = Block::new()
        .borders(Borders::RIGHT)
        .border_style(Style::new().dark_gray());
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let width = usize::from(inner.width);
    let mut lines = vec![Line::from(fit("Groups", width)).bold()];
    for (i, g) in app.groups.iter().enumerate() {
        let selected = i == app.selected;
        let unread = if g.unread > 0 {
            format!("({})", g.unread)
        } else {
            String::new()
        };
        let marker = if selected { "> " } else { "  " };
        let name_width = width.saturating_sub(2 + unread.width() + usize::from(g.unread > 0));
        let name = fit(&g.name, name_width);
        let pad = width.saturating_sub(2 + name.width() + unread.width());
        let mut style = Style::new();
        if selected {
            style = style.add_modifier(Modifier::REVERSED | Modifier::BOLD);
        }
        lines.push(Line::from(vec![
            Span::styled(format!("{marker}{name}{}", " ".repeat(pad)), style),
            Span::styled(unread, style.yellow().bold()),
        ]));
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

fn render_pane(app: &App, frame: &mut Frame, area: Rect) {
    let [title, body] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
    let title_text = match app.current() {
        Some(g) if !g.typing.is_empty() => format!(
            " {} · {} · {} typing…",
            g.name,
            g.members.join(", "),
            g.typing.join(", ")
        ),
        Some(g) => format!(" {} · {}", g.name, g.members.join(", ")),
        None => " Cove".to_owned(),
    };
    frame.render_widget(
        Paragraph::new(fit(&title_text, usize::from(title.width)))
            .style(Style::new().bold().bg(Color::DarkGray).fg(Color::White)),
        title,
    );
    let paragraph = message_paragraph(app);
    let total = paragraph.line_count(body.width);
    let rows = usize::from(body.height);
    let scroll = app.current().map_or(0, |g| g.scroll);
    let top = total.saturating_sub(rows).saturating_sub(scroll);
    let top = u16::try_from(top).unwrap_or(u16::MAX);
    frame.render_widget(paragraph.scroll((top, 0)), body);
}

/// The shown group's entries (or the lobby), wrapped.
fn message_paragraph(app: &App) -> Paragraph<'static> {
    let mut lines = Vec::new();
    let entries = match app.current() {
        Some(g) => &g.entries,
        None => {
            lines.push(Line::from(
                "No groups yet: /create NAME [USER...], or wait to be added. /help lists the \
                 commands.",
            ));
            &app.lobby
        }
    };
    let me = app.me.as_ref().map(|m| m.user.as_str());
    let mut day = None;
    for e in entries {
        let zoned = jiff::Timestamp::from_millisecond(i64::try_from(e.at_ms).unwrap_or(0))
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
            .to_zoned(app.tz.clone());
        let this_day = zoned.date();
        if day != Some(this_day) {
            day = Some(this_day);
            lines.push(Line::from(format!("── {} ──", zoned.strftime("%a %Y-%m-%d"))).dark_gray());
        }
        lines.push(entry_line(e, &zoned.strftime("%H:%M").to_string(), me));
    }
    Paragraph::new(lines).wrap(Wrap { trim: false })
}

fn entry_line(e: &Entry, time: &str, me: Option<&str>) -> Line<'static> {
    let mut spans = vec![Span::styled(format!("{time} "), Style::new().dark_gray())];
    match e.kind {
        EntryKind::Text | EntryKind::File => {
            let sender = e.sender.clone().unwrap_or_default();
            let mut style = Style::new().fg(sender_color(&sender));
            if Some(sender.as_str()) == me {
                style = style.bold();
            }
            spans.push(Span::styled(format!("<{sender}> "), style));
            if let Some(reply) = &e.reply {
                spans.push(Span::styled(
                    format!("[{reply}] "),
                    Style::new().dark_gray().italic(),
                ));
            }
            match &e.file {
                Some(f) => {
                    let index = f.index.map(|i| format!(" #{i}")).unwrap_or_default();
                    spans.push(Span::styled(
                        format!("[{} {}{index}]", f.name, cove::human_size(f.size)),
                        Style::new().cyan(),
                    ));
                }
                None => spans.push(Span::raw(e.text.clone())),
            }
            if !e.marks.is_empty() {
                spans.push(Span::styled(e.marks.clone(), Style::new().yellow()));
            }
            if e.pending {
                spans.push(Span::styled(
                    " (pending)",
                    Style::new().dark_gray().italic(),
                ));
            }
            // The short id that /reply, /react, /edit and /delete take.
            if let Some(id) = &e.id {
                spans.push(Span::styled(
                    format!("  {}", cove::short_id(id)),
                    Style::new().dark_gray(),
                ));
            }
        }
        EntryKind::Membership => {
            spans.push(Span::styled(format!("-- {}", e.text), Style::new().green()))
        }
        EntryKind::Call => spans.push(Span::styled(
            format!("-- {}", e.text),
            Style::new().magenta(),
        )),
        EntryKind::Warning => spans.push(Span::styled(
            format!("warning: {}", e.text),
            Style::new().yellow(),
        )),
        EntryKind::Identity => spans.push(Span::styled(
            format!("!! {}", e.text),
            Style::new().red().bold(),
        )),
        EntryKind::Notice => spans.push(Span::styled(format!("* {}", e.text), Style::new().blue())),
    }
    Line::from(spans)
}

fn render_banner(app: &App, frame: &mut Frame, area: Rect) {
    let Some(call) = &app.call else {
        return;
    };
    let (text, style) = if call.ringing {
        let from = call.from.as_deref().unwrap_or("someone");
        (
            format!(
                " INCOMING CALL from {from} in {}: Alt-A or /answer, Alt-D or /decline",
                call.group
            ),
            Style::new().white().on_red().bold(),
        )
    } else {
        (
            format!(" Call in {}: {}. /hangup ends it", call.group, call.state),
            Style::new().white().on_blue().bold(),
        )
    };
    frame.render_widget(
        Paragraph::new(fit(&text, usize::from(area.width))).style(style),
        area,
    );
}

fn render_transfers(app: &App, frame: &mut Frame, area: Rect) {
    let parts: Vec<String> = app
        .transfers
        .iter()
        .map(|t| {
            let percent = t.done.saturating_mul(100).checked_div(t.total).unwrap_or(0);
            format!(
                "{} {percent}% ({} of {})",
                if t.up { "upload" } else { "download" },
                cove::human_size(t.done),
                cove::human_size(t.total)
            )
        })
        .collect();
    frame.render_widget(
        Paragraph::new(fit(&parts.join("  "), usize::from(area.width))).cyan(),
        area,
    );
}

fn render_input(app: &App, frame: &mut Frame, area: Rect) {
    let width = usize::from(area.width).saturating_sub(3);
    let chars: Vec<char> = app.input.text.chars().collect();
    let cursor = app.input.cursor.min(chars.len());
    // Scroll the line so the cursor stays visible: start far enough right.
    let mut start = 0;
    let mut before: usize = chars
        .iter()
        .take(cursor)
        .map(|c| c.width().unwrap_or(0))
        .sum();
    while before > width && start < cursor {
        before -= chars.get(start).and_then(|c| c.width()).unwrap_or(0);
        start += 1;
    }
    let visible: String = chars.iter().skip(start).collect();
    let visible = cove::escape(&visible);
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled("> ", Style::new().bold()),
            Span::raw(fit(&visible, usize::from(area.width).saturating_sub(2))),
        ])),
        area,
    );
    if app.shows_cursor() {
        let x = area.x + u16::try_from(before + 2).unwrap_or(area.width);
        frame.set_cursor_position((x.min(area.right().saturating_sub(1)), area.y));
    }
}

fn render_status(app: &App, frame: &mut Frame, area: Rect) {
    let mut parts = Vec::new();
    if let Some(me) = &app.me {
        parts.push(format!("{} @ {}", me.user, me.server));
    }
    if !app.daemon_up {
        parts.push("daemon: reconnecting".to_owned());
    } else if app.relay_connected {
        parts.push("connected".to_owned());
    } else {
        parts.push("offline".to_owned());
    }
    if app.pending > 0 {
        parts.push(format!("{} pending", app.pending));
    }
    if let Some(call) = &app.call {
        parts.push(format!("call: {}", call.state));
    }
    parts.push("F1 help".to_owned());
    let text = format!(" {}", parts.join(" │ "));
    frame.render_widget(
        Paragraph::new(fit(&text, usize::from(area.width))).reversed(),
        area,
    );
}

fn render_help(frame: &mut Frame, area: Rect) {
    let lines: Vec<&str> = HELP.lines().collect();
    let width = lines.iter().map(|l| l.width()).max().unwrap_or(0) + 2;
    let width = u16::try_from(width).unwrap_or(u16::MAX).min(area.width);
    let height = u16::try_from(lines.len() + 2)
        .unwrap_or(u16::MAX)
        .min(area.height);
    let popup = Rect::new(
        area.x + (area.width - width) / 2,
        area.y + (area.height - height) / 2,
        width,
        height,
    );
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(HELP).block(Block::bordered().title(" Help (Esc closes) ")),
        popup,
    );
}

/// `text` cut to `width` terminal columns.
fn fit(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > width {
            break;
        }
        used += w;
        out.push(c);
    }
    out
}

/// A stable colour per sender name.
fn sender_color(name: &str) -> Color {
    const COLORS: [Color; 6] = [
        Color::Cyan,
        Color::Green,
        Color::Yellow,
        Color::Magenta,
        Color::LightBlue,
        Color::LightRed,
    ];
    let hash = name
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    COLORS
        .get(usize::try_from(hash).unwrap_or(0) % COLORS.len())
        .copied()
        .unwrap_or(Color::Cyan)
}

#[cfg(test)]
mod tests {
    //! The UI's logic through its rendered screen: a [`App`] fed events as the daemon and the
    //! keyboard would send them, drawn on ratatui's `TestBackend`, its cells compared as text.

    #![allow(clippy::unwrap_used)]

    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use serde_json::{Value, json};

    use super::render;
    use crate::tui::app::{Action, App, DaemonEvent, Event, RpcError};

    const FRIENDS: &str = "f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1";
    const WORK: &str = "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a";
    /// 2023-11-14 22:13:20 UTC: 00:13 on the 15th at +02:00.
    const T0: u64 = 1_700_000_000_000;

    /// The screen as text rows.
    fn screen(app: &App) -> Vec<String> {
        let (w, h) = app.size;
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        terminal.draw(|frame| render(app, frame)).unwrap();
        let buf = terminal.backend().buffer().clone();
        (0..h)
            .map(|y| (0..w).map(|x| buf[(x, y)].symbol()).collect::<String>())
            .collect()
    }

    fn shows(app: &App, text: &str) -> bool {
        screen(app).iter().any(|row| row.contains(text))
    }

    fn row_with(app: &App, text: &str) -> String {
        screen(app)
            .into_iter()
            .find(|row| row.contains(text))
            .unwrap_or_else(|| panic!("no row shows {text:?}:\n{}", screen(app).join("\n")))
    }

    /// Plays the daemon for the requests in `actions` (and those their answers cause):
    /// `answer` gives each method's result; the requests are returned in order.
    fn serve(
        app: &mut App,
        actions: Vec<Action>,
        answer: &dyn Fn(&str, &Value) -> Result<Value, RpcError>,
    ) -> Vec<(&'static str, Value)> {
        let mut seen = Vec::new();
        let mut queue = actions;
        while !queue.is_empty() {
            let mut next = Vec::new();
            for action in queue {
                if let Action::Request { id, method, params } = action {
                    let result = answer(method, &params);
                    seen.push((method, params));
                    let reply = Event::Daemon(DaemonEvent::Reply { id, result });
                    next.extend(app.update(T0, reply));
                }
            }
            queue = next;
        }
        seen
    }

    fn message(id: &str, group: &str, sender: &str, at: u64, text: &str) -> Value {
        json!({ "id": id, "group": group, "sender": sender, "sent_at_ms": at, "kind": "text",
                "text": text, "pending": false })
    }

    /// The daemon of the tests: alice in `friends` (with bob) and `work` (3 unread).
    fn daemon(method: &str, params: &Value) -> Result<Value, RpcError> {
        Ok(match method {
            "status" => json!({ "user": "alice", "device": "d1", "server": "wss://127.0.0.1:7443",
                                "connected": true, "pending": 0, "version": "1" }),
            "subscribe" => json!({ "subscribed": true }),
            "groups" => json!([
                { "group": FRIENDS, "name": "friends", "members": ["alice", "bob"], "unread": 0 },
                { "group": WORK, "name": "work", "members": ["alice", "carol"], "unread": 3 },
            ]),
            "history" if params["group"] == FRIENDS => json!([
                { "id": "m0", "group": FRIENDS, "sender": "alice", "sent_at_ms": T0 - 3_600_000,
                  "kind": "membership", "text": "alice added bob", "pending": false },
                message("m1", FRIENDS, "bob", T0, "hi alice"),
                { "id": "m2", "group": FRIENDS, "sender": "alice", "sent_at_ms": T0 + 60_000,
                  "kind": "file", "text": "photo.jpg",
                  "file": { "name": "photo.jpg", "size": 1_258_291, "index": 1 }, "pending": false },
            ]),
            "history" => json!([message("w1", WORK, "carol", T0, "standup at 10")]),
            "send" => json!({ "id": "s1", "pending": false }),
            _ => json!({}),
        })
    }

    /// alice's UI, connected, at `size`, in UTC+2.
    fn connected(size: (u16, u16)) -> App {
        let tz = jiff::tz::TimeZone::fixed(jiff::tz::Offset::constant(2));
        let mut app = App::new(tz, size);
        let actions = app.update(T0, Event::Daemon(DaemonEvent::Connected));
        let methods: Vec<_> = serve(&mut app, actions, &daemon)
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        assert_eq!(methods, ["status", "subscribe", "groups", "history"]);
        app
    }

    fn key(code: KeyCode) -> Event {
        Event::Key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn with(code: KeyCode, modifiers: KeyModifiers) -> Event {
        Event::Key(KeyEvent::new(code, modifiers))
    }

    /// Types `text` and presses Enter; returns the actions of the Enter.
    fn enter(app: &mut App, text: &str) -> Vec<Action> {
        for c in text.chars() {
            assert_eq!(app.update(T0, key(KeyCode::Char(c))), []);
        }
        app.update(T0, key(KeyCode::Enter))
    }

    fn requests(actions: &[Action]) -> Vec<(&'static str, Value)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Request { method, params, .. } => Some((*method, params.clone())),
                _ => None,
            })
            .collect()
    }

    fn notify(app: &mut App, method: &str, params: Value) -> Vec<Action> {
        let method = method.to_owned();
        app.update(
            T0,
            Event::Daemon(DaemonEvent::Notification { method, params }),
        )
    }

    /// Issue 13 in the pane: short ids, a reply's quote, reactions, `(edited)`,
    /// `(deleted)`, `[unsupported message]`; who is typing in the title; a reaction update
    /// reloads the group; `/reply`, `/react`, `/unreact`, `/edit`, `/delete` call the daemon.
    #[test]
    fn the_pane_shows_replies_reactions_edits_deletes_and_typing() {
        let mut app = connected((100, 24));
        let mut reply = message("abcdef0123456789", FRIENDS, "bob", T0 + 120_000, "yes");
        reply["reply_to"] = json!({ "id": "m1", "from": "alice", "text": "dinner?" });
        reply["reactions"] = json!([{ "emoji": "👍", "users": ["alice", "carol"] }]);
        reply["edited"] = json!(true);
        notify(&mut app, "message", reply);
        let mut gone = message("fedcba9876543210", FRIENDS, "bob", T0 + 180_000, "");
        gone["deleted"] = json!(true);
        notify(&mut app, "message", gone);
        let mut new = message("0011223344556677", FRIENDS, "bob", T0 + 240_000, "");
        new["unsupported"] = json!(true);
        notify(&mut app, "message", new);
        let row = row_with(&app, "00:15 <bob> [↪ alice: dinner?] yes (edited)");
        assert!(row.contains(" 2  abcdef01"), "{row}");
        assert!(row.contains("👍"), "{row}");
        assert!(shows(&app, "00:16 <bob> (deleted)  fedcba98"));
        assert!(shows(&app, "00:17 <bob> [unsupported message]  00112233"));

        let typing = json!({ "group": FRIENDS, "group_name": "friends", "kind": "typing",
                             "from": "bob", "active": true });
        notify(&mut app, "update", typing);
        assert!(screen(&app)[0].contains(" friends · alice, bob · bob typing…"));
        notify(
            &mut app,
            "message",
            message("m9", FRIENDS, "bob", T0, "there"),
        );
        assert!(!screen(&app)[0].contains("typing"));

        let reacted = json!({ "group": FRIENDS, "group_name": "friends", "kind": "reaction",
                              "by": "carol", "to": "abcdef0123456789", "emoji": "👍",
                              "removed": false });
        let actions = notify(&mut app, "update", reacted);
        assert_eq!(
            requests(&actions),
            [("history", json!({ "group": FRIENDS, "limit": 200 }))]
        );

        for (line, method, params) in [
            (
                "/reply abcdef01 see you",
                "reply",
                json!({ "group": FRIENDS, "to": "abcdef01", "text": "see you" }),
            ),
            (
                "/react abcdef01 🎉",
                "react",
                json!({ "group": FRIENDS, "to": "abcdef01", "emoji": "🎉", "remove": false }),
            ),
            (
                "/unreact abcdef01 🎉",
                "react",
                json!({ "group": FRIENDS, "to": "abcdef01", "emoji": "🎉", "remove": true }),
            ),
            (
                "/edit abcdef01 see you at 9",
                "edit",
                json!({ "group": FRIENDS, "to": "abcdef01", "text": "see you at 9" }),
            ),
            (
                "/delete abcdef01",
                "delete",
                json!({ "group": FRIENDS, "to": "abcdef01" }),
            ),
        ] {
            let actions = enter(&mut app, line);
            assert_eq!(requests(&actions), [(method, params)], "{line}");
        }
        assert_eq!(requests(&enter(&mut app, "/react abcdef01")), []);
        assert!(shows(&app, "usage: /react ID EMOJI"));
    }

    #[test]
    fn the_group_list_shows_unread_counts_and_marks_the_shown_group() {
        let app = connected((80, 24));
        let rows = screen(&app);
        assert!(rows[0].starts_with("Groups"), "{rows:#?}");
        assert!(rows[1].starts_with("> friends "), "{rows:#?}");
        assert!(rows[2].starts_with("  work"), "{rows:#?}");
        // The count sits at the list's right edge (20 columns, then its border).
        let work: String = rows[2].chars().take(20).collect();
        assert_eq!(work, "  work          (3)│", "{rows:#?}");
        assert!(!rows[1].contains('('), "{rows:#?}");
    }

    #[test]
    fn messages_show_local_times_senders_files_and_membership() {
        let app = connected((80, 24));
        let rows = screen(&app);
        // The pane's title names the group and its members.
        assert!(rows[0].contains(" friends · alice, bob"), "{rows:#?}");
        // 22:13 UTC on the 14th is 00:13 on the 15th at +02:00; the day changes in between.
        assert!(row_with(&app, "── Tue 2023-11-14 ──").contains("│── Tue"));
        assert!(row_with(&app, "23:13 -- alice added bob").contains("│23:13"));
        assert!(shows(&app, "── Wed 2023-11-15 ──"));
        assert!(row_with(&app, "00:13 <bob> hi alice").contains("│00:13"));
        assert!(shows(&app, "00:14 <alice> [photo.jpg 1.2 MiB #1]"));
    }

    #[test]
    fn a_message_to_another_group_raises_its_unread_count_and_one_to_the_shown_group_is_read() {
        let mut app = connected((80, 24));
        let actions = notify(
            &mut app,
            "message",
            message("w2", WORK, "carol", T0, "lunch?"),
        );
        assert_eq!(requests(&actions), []);
        assert!(row_with(&app, "  work").contains("(4)"));
        // A repeat of the same message (as after a reconnection) counts once.
        notify(
            &mut app,
            "message",
            message("w2", WORK, "carol", T0, "lunch?"),
        );
        assert!(row_with(&app, "  work").contains("(4)"));

        let actions = notify(
            &mut app,
            "message",
            message("m3", FRIENDS, "bob", T0 + 120_000, "ok"),
        );
        assert_eq!(
            requests(&actions),
            [("mark_read", json!({ "group": FRIENDS, "up_to": "m3" }))]
        );
        assert!(shows(&app, "00:15 <bob> ok"));

        // Switching to work loads it and clears its count.
        let actions = app.update(T0, key(KeyCode::Tab));
        let seen = serve(&mut app, actions, &daemon);
        assert_eq!(seen[0], ("history", json!({ "group": WORK, "limit": 200 })));
        assert_eq!(seen[1], ("mark_read", json!({ "group": WORK })));
        assert!(row_with(&app, "> work").contains("work "));
        assert!(!row_with(&app, "> work").contains('('));
        assert!(shows(&app, "00:13 <carol> standup at 10"));
        // Ctrl-P, Alt-Up and Alt-Down switch too.
        app.update(T0, with(KeyCode::Char('p'), KeyModifiers::CONTROL));
        assert!(shows(&app, "> friends"));
        app.update(T0, with(KeyCode::Up, KeyModifiers::ALT));
        assert!(shows(&app, "> work"));
        app.update(T0, with(KeyCode::Down, KeyModifiers::ALT));
        assert!(shows(&app, "> friends"));
    }

    #[test]
    fn typing_a_line_sends_it_to_the_shown_group_and_a_refusal_gives_it_back() {
        let mut app = connected((80, 24));
        let actions = enter(&mut app, "hello bob");
        assert_eq!(
            requests(&actions),
            [("send", json!({ "group": FRIENDS, "text": "hello bob" }))]
        );
        serve(&mut app, actions, &daemon);
        assert!(shows(&app, "<alice> hello bob"));
        assert!(row_with(&app, "> ").starts_with("> "));

        // `//x` sends `/x`.
        let actions = enter(&mut app, "//shrug");
        assert_eq!(
            requests(&actions),
            [("send", json!({ "group": FRIENDS, "text": "/shrug" }))]
        );

        let actions = enter(&mut app, "to nowhere");
        serve(&mut app, actions, &|_, _| {
            Err(RpcError {
                code: -32000,
                message: "no such group".into(),
                kind: Some("NoSuchGroup".into()),
            })
        });
        assert!(shows(&app, "* not sent: no such group (NoSuchGroup)"));
        assert_eq!(screen(&app)[22], format!("{:<80}", "> to nowhere"));
    }

    #[test]
    fn a_queued_message_shows_pending_until_the_relay_is_back() {
        let mut app = connected((80, 24));
        notify(&mut app, "connection", json!({ "connected": false }));
        assert!(screen(&app)[23].contains("│ offline │"));
        let actions = enter(&mut app, "while offline");
        serve(&mut app, actions, &|_, _| {
            Ok(json!({ "id": "q1", "pending": true }))
        });
        assert!(shows(&app, "<alice> while offline (pending)"));
        assert!(screen(&app)[23].contains("│ 1 pending │"));

        // Back online: the status and the shown group's history are asked for again.
        let actions = notify(&mut app, "connection", json!({ "connected": true }));
        let seen = serve(&mut app, actions, &|method, params| match method {
            "history" => Ok(json!([message(
                "q1",
                FRIENDS,
                "alice",
                T0,
                "while offline"
            )])),
            _ => daemon(method, params),
        });
        let methods: Vec<_> = seen.iter().map(|(m, _)| *m).collect();
        assert_eq!(methods, ["status", "history"]);
        assert!(shows(&app, "<alice> while offline"));
        assert!(!shows(&app, "(pending)"));
        assert!(screen(&app)[23].contains("│ connected │ F1 help"));
    }

    #[test]
    fn commands_become_their_requests() {
        let mut app = connected((80, 24));
        let cases: [(&str, (&str, Value)); 9] = [
            (
                "/file /tmp/a b.pdf",
                (
                    "send_file",
                    json!({ "group": FRIENDS, "path": "/tmp/a b.pdf" }),
                ),
            ),
            (
                "/download 2",
                ("download", json!({ "group": FRIENDS, "file": 2 })),
            ),
            (
                "/add carol dave",
                (
                    "group_add",
                    json!({ "group": FRIENDS, "users": ["carol", "dave"] }),
                ),
            ),
            (
                "/remove bob",
                (
                    "group_remove",
                    json!({ "group": FRIENDS, "users": ["bob"] }),
                ),
            ),
            ("/leave", ("group_leave", json!({ "group": FRIENDS }))),
            ("/call", ("call", json!({ "group": FRIENDS }))),
            ("/hangup", ("hangup", json!({}))),
            (
                "/create team bob carol",
                (
                    "group_create",
                    json!({ "name": "team", "members": ["bob", "carol"] }),
                ),
            ),
            ("/verify bob", ("safety_number", json!({ "user": "bob" }))),
        ];
        for (line, expected) in cases {
            assert_eq!(requests(&enter(&mut app, line)), [expected], "{line}");
        }
        // `/verify bob yes` fetches the number and confirms it.
        let actions = enter(&mut app, "/verify bob yes");
        let seen = serve(&mut app, actions, &|method, _| {
            Ok(match method {
                "safety_number" => json!({ "number": "12345 67890", "verified": false }),
                "verify" => json!({ "verified": true }),
                _ => json!({}),
            })
        });
        assert_eq!(
            seen[1],
            ("verify", json!({ "user": "bob", "number": "12345 67890" }))
        );
        assert!(shows(&app, "* bob is verified"));
        // Leaving the shown group: the note shows in the group shown next.
        let actions = enter(&mut app, "/leave");
        serve(&mut app, actions, &|method, params| match method {
            "groups" => Ok(json!([
                { "group": WORK, "name": "work", "members": ["alice", "carol"], "unread": 0 },
            ])),
            _ => daemon(method, params),
        });
        assert!(shows(&app, "> work"));
        let list: Vec<String> = screen(&app)
            .iter()
            .map(|r| r.chars().take(19).collect())
            .collect();
        assert!(!list.iter().any(|r| r.contains("friends")), "{list:#?}");
        assert!(shows(&app, "* left friends"));
        // Mistakes are explained, not sent.
        assert_eq!(requests(&enter(&mut app, "/download")), []);
        assert!(shows(&app, "* usage: /download N"));
        assert_eq!(requests(&enter(&mut app, "/frobnicate")), []);
        assert!(shows(
            &app,
            "* unknown command /frobnicate (/help lists them)"
        ));
        assert_eq!(enter(&mut app, "/quit"), [Action::Quit]);
        assert_eq!(
            app.update(T0, with(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            [Action::Quit]
        );
    }

    #[test]
    fn an_incoming_call_rings_shows_a_banner_and_is_answered_with_alt_a() {
        let mut app = connected((80, 24));
        let actions = notify(
            &mut app,
            "incoming_call",
            json!({ "call": "c1", "group": FRIENDS, "from": "bob", "video": false }),
        );
        assert_eq!(actions, [Action::Bell]);
        let rows = screen(&app);
        assert_eq!(
            rows[21].trim_end(),
            " INCOMING CALL from bob in friends: Alt-A or /answer, Alt-D or /decline"
        );
        assert!(rows[23].contains("call: ringing"), "{rows:#?}");
        assert!(shows(&app, "00:13 -- incoming call from bob"));

        // `cove tui --audio-in tone --audio-out none` answers with those.
        app.set_audio(Some("tone".into()), Some("none".into()));
        let actions = app.update(T0, with(KeyCode::Char('a'), KeyModifiers::ALT));
        assert_eq!(
            requests(&actions),
            [(
                "answer",
                json!({ "call": "c1", "audio_in": "tone", "audio_out": "none" })
            )]
        );
        serve(&mut app, actions, &daemon);
        assert_eq!(
            screen(&app)[21].trim_end(),
            " Call in friends: connecting. /hangup ends it"
        );
        notify(
            &mut app,
            "call_state",
            json!({ "call": "c1", "group": FRIENDS, "state": "connected" }),
        );
        assert!(screen(&app)[23].contains("call: connected"));
        notify(
            &mut app,
            "call_state",
            json!({ "call": "c1", "group": FRIENDS, "state": "ended", "reason": "hung up" }),
        );
        assert!(!shows(&app, "Call in friends"));
        assert!(shows(&app, "-- call ended (hung up)"));
        // The banner's row went back to the messages: the input line is at row 22 again.
        assert!(screen(&app)[22].starts_with("> "));
    }

    #[test]
    fn an_outgoing_call_follows_the_daemons_call_states() {
        let mut app = connected((80, 24));
        let actions = enter(&mut app, "/call");
        let Some(Action::Request { id, .. }) = actions.first().cloned() else {
            panic!("no request: {actions:?}");
        };
        // The daemon announces the call before it answers the request.
        notify(
            &mut app,
            "call_state",
            json!({ "call": "c3", "group": FRIENDS, "state": "ringing" }),
        );
        let reply = |app: &mut App| {
            let result = Ok(json!({ "call": "c3" }));
            app.update(T0, Event::Daemon(DaemonEvent::Reply { id, result }))
        };
        reply(&mut app);
        assert_eq!(
            screen(&app)[21].trim_end(),
            " Call in friends: ringing. /hangup ends it"
        );
        notify(
            &mut app,
            "call_state",
            json!({ "call": "c3", "group": FRIENDS, "state": "peer_left" }),
        );
        assert!(screen(&app)[23].contains("call: peer left"));
        notify(
            &mut app,
            "call_state",
            json!({ "call": "c3", "group": FRIENDS, "state": "ended", "reason": "no answer" }),
        );
        assert!(shows(&app, "-- call ended (no answer)"));
        assert!(!screen(&app)[23].contains("call:"));
        // A late answer to `call` does not bring the ended call back.
        let mut late = connected((80, 24));
        let actions = enter(&mut late, "/call");
        let Some(Action::Request { id, .. }) = actions.first().cloned() else {
            panic!("no request: {actions:?}");
        };
        notify(
            &mut late,
            "call_state",
            json!({ "call": "c4", "group": FRIENDS, "state": "ended" }),
        );
        let result = Ok(json!({ "call": "c4" }));
        late.update(T0, Event::Daemon(DaemonEvent::Reply { id, result }));
        assert!(!shows(&late, "Call in friends"));
    }

    #[test]
    fn an_incoming_call_is_declined_with_slash_decline() {
        let mut app = connected((80, 24));
        notify(
            &mut app,
            "incoming_call",
            json!({ "call": "c2", "group": FRIENDS, "from": "bob", "video": true }),
        );
        assert!(shows(&app, "incoming video call from bob"));
        let actions = enter(&mut app, "/decline");
        assert_eq!(requests(&actions), [("decline", json!({ "call": "c2" }))]);
        // Nothing rings: /answer has nothing to answer.
        assert_eq!(requests(&enter(&mut app, "/answer")), []);
        assert!(shows(&app, "* no incoming call to answer"));
    }

    #[test]
    fn help_lists_the_commands_and_keys_and_esc_closes_it() {
        let mut app = connected((80, 24));
        assert_eq!(enter(&mut app, "/help"), []);
        let text = screen(&app).join("\n");
        for needle in [
            "Help (Esc closes)",
            "/file PATH",
            "/download N",
            "/answer  /decline",
            "/verify USER [yes]",
            "Tab Ctrl-N Alt-Down",
            "PgUp PgDn",
        ] {
            assert!(text.contains(needle), "{needle} is missing:\n{text}");
        }
        app.update(T0, key(KeyCode::Esc));
        assert!(!shows(&app, "Help (Esc closes)"));
        app.update(T0, key(KeyCode::F(1)));
        assert!(shows(&app, "Help (Esc closes)"));
    }

    #[test]
    fn the_screen_fits_80x24_and_follows_a_resize() {
        let mut app = connected((80, 24));
        for c in "draft".chars() {
            app.update(T0, key(KeyCode::Char(c)));
        }
        let rows = screen(&app);
        assert_eq!(rows.len(), 24);
        assert_eq!(rows[22], format!("{:<80}", "> draft"));
        assert_eq!(
            rows[23].trim_end(),
            " alice @ wss://127.0.0.1:7443 │ connected │ F1 help"
        );
        // The group list is 20 columns wide with its border; the pane has the rest.
        assert!(
            rows.iter().take(22).all(|r| r.chars().nth(19) == Some('│')),
            "{rows:#?}"
        );

        app.update(T0, Event::Resize(120, 30));
        let rows = screen(&app);
        assert_eq!(rows.len(), 30);
        assert_eq!(rows[28], format!("{:<120}", "> draft"));
        assert!(rows[29].contains("F1 help"));
        assert!(
            rows.iter().take(28).all(|r| r.chars().nth(23) == Some('│')),
            "{rows:#?}"
        );
        assert!(shows(&app, "00:13 <bob> hi alice"));
    }

    #[test]
    fn the_input_line_edits_at_the_cursor() {
        let mut app = connected((80, 24));
        let input = |app: &App| screen(app)[22].trim_end().to_owned();
        for c in "helo wrld".chars() {
            app.update(T0, key(KeyCode::Char(c)));
        }
        for _ in 0..3 {
            app.update(T0, key(KeyCode::Left));
        }
        app.update(T0, key(KeyCode::Char('o')));
        app.update(T0, key(KeyCode::Home));
        for _ in 0..3 {
            app.update(T0, key(KeyCode::Right));
        }
        app.update(T0, key(KeyCode::Char('l')));
        assert_eq!(input(&app), "> hello world");
        app.update(T0, key(KeyCode::Home));
        app.update(T0, key(KeyCode::Delete));
        app.update(T0, with(KeyCode::Char('e'), KeyModifiers::CONTROL));
        app.update(T0, key(KeyCode::Backspace));
        assert_eq!(input(&app), "> ello worl");
        app.update(T0, with(KeyCode::Char('a'), KeyModifiers::CONTROL));
        for _ in 0..4 {
            app.update(T0, key(KeyCode::Right));
        }
        app.update(T0, with(KeyCode::Char('u'), KeyModifiers::CONTROL));
        assert_eq!(input(&app), ">  worl");
        app.update(T0, key(KeyCode::End));
        app.update(T0, with(KeyCode::Char('u'), KeyModifiers::CONTROL));
        assert_eq!(input(&app), ">");
    }

    #[test]
    fn tiny_terminals_draw_without_panicking() {
        let mut app = connected((80, 24));
        notify(
            &mut app,
            "incoming_call",
            json!({ "call": "c1", "group": FRIENDS, "from": "bob", "video": false }),
        );
        notify(
            &mut app,
            "transfer",
            json!({ "id": "t1", "group": FRIENDS, "direction": "down", "done": 1, "total": 2 }),
        );
        for (w, h) in [(1, 1), (2, 2), (10, 3), (20, 5), (13, 24), (80, 4), (0, 0)] {
            app.update(T0, Event::Resize(w, h));
            app.update(T0, key(KeyCode::PageUp));
            app.update(T0, key(KeyCode::F(1)));
            assert!(app.help);
            let rows = screen(&app);
            assert_eq!(rows.len(), usize::from(h));
        }
    }

    #[test]
    fn page_up_shows_older_messages_and_page_down_returns() {
        let mut app = connected((80, 24));
        for i in 0..40u64 {
            let id = format!("n{i}");
            notify(
                &mut app,
                "message",
                message(&id, FRIENDS, "bob", T0 + 600_000 + i, &format!("line {i}")),
            );
        }
        assert!(shows(&app, "<bob> line 39"));
        assert!(!shows(&app, "<bob> line 10 "));
        app.update(T0, key(KeyCode::PageUp));
        assert!(!shows(&app, "<bob> line 39"));
        assert!(shows(&app, "<bob> line 19"));
        for _ in 0..10 {
            app.update(T0, key(KeyCode::PageUp));
        }
        // At the top: the first lines, and no further than that.
        assert!(shows(&app, "── Tue 2023-11-14 ──"));
        app.update(T0, key(KeyCode::PageDown));
        app.update(T0, key(KeyCode::PageDown));
        app.update(T0, key(KeyCode::PageDown));
        assert!(shows(&app, "<bob> line 39"));
    }

    #[test]
    fn page_up_at_the_top_fetches_older_messages_until_there_are_none() {
        let tz = jiff::tz::TimeZone::UTC;
        let mut app = App::new(tz, (80, 24));
        // A full first page of history (200): there may be more.
        let full = |method: &str, params: &Value| match method {
            "history" if params.get("before").is_none() => Ok(Value::Array(
                (0..200u64)
                    .map(|i| message(&format!("h{i}"), FRIENDS, "bob", T0 + i, &format!("h{i}")))
                    .collect(),
            )),
            _ => daemon(method, params),
        };
        let actions = app.update(T0, Event::Daemon(DaemonEvent::Connected));
        serve(&mut app, actions, &full);
        let mut older = Vec::new();
        for _ in 0..20 {
            older.extend(requests(&app.update(T0, key(KeyCode::PageUp))));
        }
        // One request: not again while it is on its way.
        assert_eq!(
            older,
            [(
                "history",
                json!({ "group": FRIENDS, "limit": 200, "before": "h0" })
            )]
        );
        // Answered with two older messages (fewer than asked for: that was all), they show
        // at the top, and PgUp there asks for nothing more.
        let mut app2 = App::new(jiff::tz::TimeZone::UTC, (80, 24));
        let actions = app2.update(T0, Event::Daemon(DaemonEvent::Connected));
        serve(&mut app2, actions, &full);
        let mut asked = Vec::new();
        for _ in 0..20 {
            asked.extend(app2.update(T0, key(KeyCode::PageUp)));
        }
        serve(&mut app2, asked, &|_, _| {
            Ok(json!([
                message("o1", FRIENDS, "carol", T0 - 2_000, "the very first"),
                message("o2", FRIENDS, "carol", T0 - 1_000, "the second"),
            ]))
        });
        for _ in 0..5 {
            app2.update(T0, key(KeyCode::PageUp));
        }
        assert!(
            shows(&app2, "<carol> the very first"),
            "{:#?}",
            screen(&app2)
        );
        for _ in 0..5 {
            assert_eq!(requests(&app2.update(T0, key(KeyCode::PageUp))), []);
        }
    }

    #[test]
    fn transfers_membership_warnings_and_identity_changes_are_shown() {
        let mut app = connected((80, 24));
        notify(
            &mut app,
            "transfer",
            json!({ "id": "t1", "group": FRIENDS, "direction": "up", "done": 524_288, "total": 1_048_576 }),
        );
        assert_eq!(
            screen(&app)[21].trim_end(),
            "upload 50% (512.0 KiB of 1.0 MiB)"
        );
        notify(
            &mut app,
            "transfer",
            json!({ "id": "t1", "group": FRIENDS, "direction": "up", "done": 1_048_576, "total": 1_048_576 }),
        );
        assert!(!shows(&app, "upload"));

        let actions = notify(
            &mut app,
            "membership",
            json!({ "group": FRIENDS, "kind": "added", "users": ["carol"], "by": "bob" }),
        );
        assert_eq!(requests(&actions), [("groups", json!({}))]);
        assert!(shows(&app, "00:13 -- bob added carol"));
        notify(
            &mut app,
            "warning",
            json!({ "group": FRIENDS, "text": "an entry could not be read" }),
        );
        assert!(shows(&app, "00:13 warning: an entry could not be read"));
        notify(
            &mut app,
            "identity",
            json!({ "user": "bob", "kind": "changed", "text": "bob's identity key changed" }),
        );
        assert!(shows(&app, "00:13 !! bob's identity key changed"));
        notify(
            &mut app,
            "identity",
            json!({ "user": "bob", "kind": "verified", "text": "bob is verified" }),
        );
        assert!(shows(&app, "00:13 * bob is verified"));
        // One about a group shows there only (friends is shown: not here).
        let refused = "a device of dave was refused in work";
        notify(
            &mut app,
            "identity",
            json!({ "user": "dave", "kind": "leaf_refused", "text": refused, "group": WORK }),
        );
        assert!(!shows(&app, refused));
        app.update(T0, key(KeyCode::Tab));
        assert!(shows(&app, "> work"));
        assert!(shows(&app, refused));
        // bob's change shows in the groups with bob only.
        assert!(!shows(&app, "identity key changed"));
    }

    #[test]
    fn control_characters_from_others_are_shown_escaped() {
        let mut app = connected((80, 24));
        notify(
            &mut app,
            "message",
            message(
                "x1",
                FRIENDS,
                "bob\u{1b}[31m",
                T0 + 1,
                "\u{1b}[2Jgone\u{202e}",
            ),
        );
        let text = screen(&app).join("\n");
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{202e}'),
            "{text}"
        );
        assert!(
            text.contains(r"<bob\u{1b}[31m> \u{1b}[2Jgone\u{202e}"),
            "{text}"
        );
    }

    #[test]
    fn losing_the_daemon_shows_in_the_status_line_and_a_reconnection_reloads() {
        let mut app = connected((80, 24));
        app.update(T0, Event::Daemon(DaemonEvent::Lost("closed".into())));
        assert!(screen(&app)[23].contains("daemon: reconnecting"));
        assert!(shows(&app, "* lost the daemon: closed (reconnecting)"));
        let actions = app.update(T0, Event::Daemon(DaemonEvent::Connected));
        let seen = serve(&mut app, actions, &daemon);
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(screen(&app)[23].contains("│ connected │"));
        // The reload did not duplicate what was shown.
        let text = screen(&app).join("\n");
        assert_eq!(text.matches("<bob> hi alice").count(), 1, "{text}");
    }
}
