"""`healthcode card`: printed codes for people without a smartphone (R3, docs/cards.md).

A card is credit-card size (ID-1, 85.6 x 54 mm), black on white: the QR code of its long-lived
token, the holder's masked name and ID number, the issue date, the card's short id and "scan for
the live colour" in Chinese and English. No colour is printed: the colour is live, asked at
every scan. `issue` writes it as PDF (fpdf2; the QR drawn as vector squares) or PNG (300 dpi,
Pillow), both from one layout.

The Chinese lines need a font with CJK glyphs: --font, HEALTHCODE_CARD_FONT, or one found at
the usual Debian paths (fonts-noto-cjk, fonts-wqy-microhei, fonts-wqy-zenhei). Without one the
card is still made, with the English lines only and a warning.

Every call goes to the declaration service named by the root options (`healthcode
--declaration HOST:PORT card ...`).
"""

from __future__ import annotations

import datetime as dt
import enum
import io
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import segno
import typer
from fontTools.ttLib import TTCollection, TTFont, TTLibError
from fpdf import FPDF
from healthcode.v1 import common_pb2, declaration_pb2, declaration_pb2_grpc
from PIL import Image, ImageDraw, ImageFont
from rich.table import Table

from clients.cli_support import (
    CST,
    HOLDER_ROLE_NAME,
    ProxyOption,
    T,
    acting,
    cst,
    declaration_call,
    err,
    out,
    recorded,
)

card_app = typer.Typer(
    name="card",
    help="Printed codes (打印码) for people without a smartphone: [bold]issue[/] makes a card "
    "(PDF or PNG) whose QR code a verifier scans for the live colour, and revokes the person's "
    "previous card; [bold]revoke[/] ends a card at once (a lost card); [bold]list[/] shows a "
    "person's cards. For the holder, a family member or grid worker with a mandate, the "
    "support desk or an administrator. Everything printed is masked.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
FONT_ENV = "HEALTHCODE_CARD_FONT"
# Where Debian's CJK font packages put their files (the first that exists is used).
CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
)
LATIN_FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"

# ID-1 (credit card) size, millimetres; the PNG at 300 dpi.
CARD_W, CARD_H = 85.6, 54.0
DPI = 300
QR_SIZE = 46.0  # the QR code, quiet zone included
QR_ERROR = "q"  # a worn card still scans (25% of the code may be lost)


class By(enum.StrEnum):
    """Who acts on a card."""

    citizen = "citizen"
    family_proxy = "family-proxy"
    grid_worker = "grid-worker"
    support = "support"
    admin = "admin"


_STATE = {
    declaration_pb2.PRINTED_CARD_STATE_LIVE: "[bold green]live[/]",
    declaration_pb2.PRINTED_CARD_STATE_REVOKED: "[red]revoked[/]",
    declaration_pb2.PRINTED_CARD_STATE_EXPIRED: "[yellow]expired[/]",
}

IdNumberOption = Annotated[
    str, typer.Option("--id-number", help="The card holder's resident ID number.")
]
ByOption = Annotated[
    By,
    typer.Option(
        "--by",
        help="Who acts: citizen (the holder), family-proxy (give --proxy-id), grid-worker, "
        "support or admin (give --principal).",
    ),
]
PrincipalOption = Annotated[
    str, typer.Option(help="The account id of the grid worker, support desk or admin.")
]


def _call(call: Callable[[declaration_pb2_grpc.DeclarationServiceStub], T], what: str) -> T:
    """One call to the DeclarationService; a failure is printed and exits 1."""
    return declaration_call(declaration_pb2_grpc.DeclarationServiceStub, call, what)


# --- the card's layout ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CardFace:
    """What a card shows (masked only)."""

    token: str
    masked_name: str
    masked_id_number: str
    issued_on: str  # YYYY-MM-DD, Asia/Shanghai
    short_id: str


@dataclass(frozen=True, slots=True)
class Line:
    """One line of text: position (mm, baseline-ish top), size (pt), bold."""

    x: float
    y: float
    text: str
    size: float
    bold: bool = False


def face_of(card: declaration_pb2.PrintedCard, token: str) -> CardFace:
    issued = card.issued_at.ToDatetime(dt.UTC).astimezone(CST)
    return CardFace(
        token, card.masked_name, card.masked_id_number, f"{issued:%Y-%m-%d}", card.short_id
    )


def qr_code(token: str) -> segno.QRCode:
    """The card's QR code: alphanumeric mode (the token's alphabet is QR's), level Q."""
    return segno.make(token, error=QR_ERROR, micro=False)


def _lines(face: CardFace, chinese: bool) -> list[Line]:
    """The text, placed right of the QR code; the Chinese lines only with a CJK font."""
    x = 3 + QR_SIZE + 2
    if not chinese:
        return [
            Line(x, 5, "Health code card", 9, True),
            Line(x, 15, face.masked_name, 12, True),
            Line(x, 22, face.masked_id_number, 7),
            Line(x, 28, f"Issued {face.issued_on}", 6.5),
            Line(x, 32.5, f"Card {face.short_id}", 6.5),
            Line(x, 39, "Scan for the live colour", 6.5, True),
            Line(x, 44.5, "Lost? Reissue at the", 5.5),
            Line(x, 47.5, "community office", 5.5),
        ]
    return [
        Line(x, 4.5, "健康码 打印卡", 9, True),
        Line(x, 9.5, "Health code card", 6),
        Line(x, 14.5, face.masked_name, 12, True),
        Line(x, 21.5, face.masked_id_number, 7),
        Line(x, 27, f"签发 Issued {face.issued_on}", 6.5),
        Line(x, 31, f"卡号 Card {face.short_id}", 6.5),
        Line(x, 37, "扫码查看实时码色", 7.5, True),
        Line(x, 41.5, "Scan for the live colour", 6.5),
        Line(x, 45.5, "挂失补办: 社区办公室", 5.5),
        Line(x, 48.5, "Lost? Reissue: community office", 5),
    ]


def find_font(explicit: Path | None) -> Path | None:
    """A font with CJK glyphs: --font, HEALTHCODE_CARD_FONT, else a Debian CJK font."""
    if explicit is not None:
        return explicit
    env = os.environ.get(FONT_ENV, "").strip()
    if env:
        return Path(env)
    return next((Path(p) for p in CJK_FONTS if Path(p).exists()), None)


def _has_glyphs(font: Path, text: str) -> bool:
    try:
        if font.suffix.lower() == ".ttc":
            cmap = TTCollection(str(font)).fonts[0]["cmap"].getBestCmap()
        else:
            cmap = TTFont(str(font), lazy=True)["cmap"].getBestCmap()
    except (OSError, KeyError, ValueError, TTLibError):  # unreadable: as if there were none
        return False
    return all(ord(c) in cmap for c in text if not c.isspace())


def _renderable(face: CardFace, font: Path | None) -> tuple[Path, bool, CardFace]:
    """The font to use, whether the Chinese lines go on the card, and the face with any
    character the font cannot draw in the masked name shown as "?"."""
    if font is not None and _has_glyphs(font, "健康码扫查看实时色签发卡号挂失补办社区办公室"):
        return font, True, face
    if font is not None:
        err.print(f"[yellow]{font} has no Chinese glyphs[/]", highlight=False)
    err.print(
        "[yellow]no CJK font found: the card gets the English lines only. Install "
        f"fonts-wqy-microhei (or fonts-noto-cjk), or give --font / {FONT_ENV}.[/]"
    )
    name = "".join(c if c.isascii() else "?" for c in face.masked_name)
    return (
        Path(LATIN_FONT),
        False,
        CardFace(face.token, name, face.masked_id_number, face.issued_on, face.short_id),
    )


def _dark_runs(qr: segno.QRCode) -> Iterator[tuple[int, int, int]]:
    """(row, first column, length) of each horizontal run of dark modules, quiet zone
    included in the coordinates."""
    border = 4
    for r, row in enumerate(qr.matrix):
        c = 0
        while c < len(row):
            if row[c]:
                start = c
                while c < len(row) and row[c]:
                    c += 1
                yield r + border, start + border, c - start
            else:
                c += 1


def write_pdf(face: CardFace, path: Path, font: Path | None = None) -> None:
    font_path, chinese, face = _renderable(face, font)
    pdf = FPDF(orientation="L", unit="mm", format=(CARD_H, CARD_W))
    pdf.set_auto_page_break(False)
    pdf.set_margin(0)
    pdf.add_page()
    pdf.add_font("card", "", str(font_path))
    pdf.set_draw_color(160)
    pdf.set_line_width(0.2)
    pdf.rect(0.5, 0.5, CARD_W - 1, CARD_H - 1)  # the cutting line
    qr = qr_code(face.token)
    size = int(qr.symbol_size()[0])
    module = QR_SIZE / size
    pdf.set_fill_color(0)
    x0, y0 = 3.0, (CARD_H - QR_SIZE) / 2
    for r, c, n in _dark_runs(qr):
        pdf.rect(x0 + c * module, y0 + r * module, n * module, module, style="F")
    pdf.set_text_color(0)
    for line in _lines(face, chinese):
        pdf.set_font("card", size=line.size)
        pdf.text(line.x, line.y + line.size * 0.3528, line.text)  # pt -> mm: baseline
        if line.bold:  # a faux bold: the font file has one weight
            pdf.text(line.x + 0.08, line.y + line.size * 0.3528, line.text)
    pdf.set_title(f"Health code card {face.short_id}")
    pdf.output(str(path))


def _px(mm: float) -> int:
    return round(mm / 25.4 * DPI)


def render_png(face: CardFace, font: Path | None = None) -> Image.Image:
    font_path, chinese, face = _renderable(face, font)
    image = Image.new("L", (_px(CARD_W), _px(CARD_H)), 255)
    draw = ImageDraw.Draw(image)
    draw.rectangle((2, 2, image.width - 3, image.height - 3), outline=160, width=2)
    qr = qr_code(face.token)
    buffer = io.BytesIO()
    size = int(qr.symbol_size()[0])
    scale = max(1, _px(QR_SIZE) // size)
    qr.save(buffer, kind="png", scale=scale, border=4)
    code = Image.open(io.BytesIO(buffer.getvalue())).convert("L")
    image.paste(code, (_px(3), (image.height - code.height) // 2))
    for line in _lines(face, chinese):
        typeface = ImageFont.truetype(str(font_path), round(line.size / 72 * DPI))
        stroke = 1 if line.bold else 0
        draw.text((_px(line.x), _px(line.y)), line.text, fill=0, font=typeface, stroke_width=stroke)
    return image


def qr_module_size_px(token: str) -> tuple[int, int, int]:
    """Where the QR code sits in the PNG: (left, top, module size in pixels), for checks."""
    qr = qr_code(token)
    size = int(qr.symbol_size()[0])
    scale = max(1, _px(QR_SIZE) // size)
    height = size * scale
    return _px(3) + 4 * scale, (_px(CARD_H) - height) // 2 + 4 * scale, scale


# --- commands -------------------------------------------------------------------------------


@card_app.command("issue")
def card_issue(
    id_number: IdNumberOption,
    out_path: Annotated[
        Path, typer.Option("--out", help="Where to write the card: a .pdf, or a .png with --png.")
    ] = Path("card.pdf"),
    png: Annotated[
        bool, typer.Option("--png", help="Write a PNG (300 dpi) instead of a PDF.")
    ] = False,
    font: Annotated[
        Path | None,
        typer.Option(
            help=f"A font with Chinese glyphs (else {FONT_ENV}, else a Debian CJK font).",
            show_default=False,
        ),
    ] = None,
    token_out: Annotated[
        Path | None,
        typer.Option(
            "--token-out",
            help="Also write the text the card's QR code holds to this file (mode 0600), for a "
            'scanner without a camera: `healthcode bus-scan "$(cat FILE)"`.',
            show_default=False,
        ),
    ] = None,
    by: ByOption = By.citizen,
    proxy_id: ProxyOption = None,
    principal: PrincipalOption = "cli",
) -> None:
    """Issue a printed card for a person and write it to --out (PDF, or PNG with --png).

    The person's previous card, if any, is revoked at once: a verifier scanning it is told to
    have a new one issued.

    [dim]healthcode card issue --id-number GRANNY_ID --by family-proxy --proxy-id MY_ID --out card.pdf[/]
    [dim]healthcode card issue --id-number PERSON_ID --by support --principal desk-2 --png --out card.png[/]"""
    request = declaration_pb2.IssuePrintedCardRequest(
        actor=acting(by, id_number, proxy_id, principal),
        person=common_pb2.PersonRef(id_number=id_number),
    )
    issued = _call(lambda stub: stub.IssuePrintedCard(request), "card issue")
    if token_out is not None:
        fd = os.open(token_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(issued.token + "\n")
    face = face_of(issued.card, issued.token)
    if png:
        render_png(face, find_font(font)).save(out_path, dpi=(DPI, DPI))
    else:
        write_pdf(face, out_path, find_font(font))
    card = issued.card
    out.print(
        f"card {card.short_id} for {card.masked_name} ({card.masked_id_number}) written to "
        f"{out_path}; scans until {cst(card.expires_at)} CST",
        highlight=False,
    )
    if issued.HasField("replaced"):
        out.print(
            f"card {issued.replaced.short_id} is revoked: it no longer scans", highlight=False
        )


@card_app.command("revoke")
def card_revoke(
    id_number: IdNumberOption,
    card: Annotated[
        str | None,
        typer.Option(
            help="The card's short id (`card list`); default: the live card.", show_default=False
        ),
    ] = None,
    reason: Annotated[
        str, typer.Option(help="Why (stored and shown; no ID or phone numbers).")
    ] = "",
    by: ByOption = By.citizen,
    proxy_id: ProxyOption = None,
    principal: PrincipalOption = "cli",
) -> None:
    """Revoke a person's printed card now (lost, stolen).

    The next scan of it fails with CARD_REVOKED; `card issue` makes a new one.

    [dim]healthcode card revoke --id-number GRANNY_ID --by family-proxy --proxy-id MY_ID --reason lost[/]"""
    actor = acting(by, id_number, proxy_id, principal)
    person = common_pb2.PersonRef(id_number=id_number)
    card_id = b""
    if card is not None:
        listed = _call(
            lambda stub: stub.ListPrintedCards(
                declaration_pb2.ListPrintedCardsRequest(actor=actor, person=person)
            ),
            "card revoke",
        )
        wanted = card.strip().upper()
        found = [c for c in listed.cards if c.short_id == wanted]
        if not found:
            raise typer.BadParameter(
                f"{card!r}: not one of this person's cards", param_hint="--card"
            )
        card_id = found[0].card_id
    request = declaration_pb2.RevokePrintedCardRequest(
        actor=actor, person=person, card_id=card_id, reason=reason
    )
    done = _call(lambda stub: stub.RevokePrintedCard(request), "card revoke")
    verb = "revoked" if done.revoked else "was already revoked"
    c = done.card
    out.print(
        f"card {c.short_id} of {c.masked_name} ({c.masked_id_number}) {verb}", highlight=False
    )


@card_app.command("list")
def card_list(
    id_number: IdNumberOption,
    by: ByOption = By.citizen,
    proxy_id: ProxyOption = None,
    principal: PrincipalOption = "cli",
) -> None:
    """A person's printed cards, newest first, with who issued and revoked each (masked).

    [dim]healthcode card list --id-number GRANNY_ID --by family-proxy --proxy-id MY_ID[/]"""
    request = declaration_pb2.ListPrintedCardsRequest(
        actor=acting(by, id_number, proxy_id, principal),
        person=common_pb2.PersonRef(id_number=id_number),
    )
    listed = _call(lambda stub: stub.ListPrintedCards(request), "card list")
    if not listed.cards:
        out.print("no printed cards")
        return
    print_cards(listed.cards)


def print_cards(cards: Sequence[declaration_pb2.PrintedCard]) -> None:
    first = cards[0]
    table = Table(title=f"printed cards of {first.masked_name} ({first.masked_id_number})")
    for column in ("card", "state", "issued (CST)", "by", "until", "revoked"):
        table.add_column(column)
    for c in cards:
        revoked = ""
        if c.HasField("revoked_at"):
            revoked = f"{cst(c.revoked_at)} by {recorded(c.revoked_by, HOLDER_ROLE_NAME)}"
            if c.revoke_reason:
                revoked += f": {c.revoke_reason}"
        table.add_row(
            c.short_id,
            _STATE.get(c.state, "?"),
            cst(c.issued_at),
            recorded(c.issued_by, HOLDER_ROLE_NAME)
            + (f" (mandate {c.mandate_id})" if c.mandate_id else ""),
            cst(c.expires_at)[:10],
            revoked,
        )
    out.print(table)


@card_app.command("rotate-key")
def card_rotate_key(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="HEALTHCODE_DATA_DIR",
            help="The declaration service's data directory (holds declaration/card-keys).",
        ),
    ] = None,
    keys_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="HEALTHCODE_CARD_KEYS_DIR", help="The card key ring itself, if elsewhere."
        ),
    ] = None,
) -> None:
    """A new card key signs the cards issued from now on. The cards already printed keep
    scanning: a retired card key stays published for the longest life a card may have (five
    years), not the 75 s of the display's minute keys (`healthcode keys rotate`)."""
    from services.declaration.cards import card_keys_dir
    from services.display.cards import MAX_CARD_TTL_MS
    from services.display.keyring import KeyRingError, rotate

    if keys_dir is None:
        if data_dir is None:
            raise typer.BadParameter(
                "say where the card keys are: --data-dir or --keys-dir", param_hint="--data-dir"
            )
        keys_dir = card_keys_dir({}, data_dir)
    try:
        done = rotate(keys_dir, keep_retired_ms=MAX_CARD_TTL_MS)
    except KeyRingError as e:
        err.print(f"[bold red]rotation failed:[/] {e}", highlight=False)
        raise typer.Exit(1) from None
    out.print(f"card key {done.signer.key_id_hex} signs new cards from now", highlight=False)
    for key in done.retired:
        out.print(f"card key {key.key_id_hex} retired: its cards keep scanning", highlight=False)
