/**
 * A server-sent-events reader: text in (any chunking), the `data` of each complete event out. Lines are
 * split on \n, \r\n or \r; `data:` lines of one event join with \n; comments (":") and other fields are
 * ignored; an event ends at a blank line.
 */
export class SseParser {
  private buf = "";
  private data: string[] = [];
  private sawCr = false;

  /** Feeds text; returns the data of the events it completed. */
  push(text: string): string[] {
    let s = text;
    // A \r that ended the last piece was a line end; a \n right after it belongs to it.
    if (this.sawCr && s.startsWith("\n")) s = s.slice(1);
    this.sawCr = s.endsWith("\r");
    this.buf += s;
    const out: string[] = [];
    const lines = this.buf.split(/\r\n|\r|\n/);
    this.buf = lines.pop() ?? "";
    for (const line of lines) {
      if (line === "") {
        if (this.data.length > 0) out.push(this.data.join("\n"));
        this.data = [];
      } else if (line.startsWith("data:")) {
        this.data.push(line.slice(line[5] === " " ? 6 : 5));
      }
    }
    return out;
  }

  /** At the end of the stream: an event not closed by a blank line still counts. */
  end(): string[] {
    const out = this.push("\n\n");
    this.buf = "";
    return out;
  }
}
