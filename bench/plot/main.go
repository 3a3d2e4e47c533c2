// Command plot draws bench/results/loadtest.png from bench/results/summary.md:
// req/s and p99 latency of each server (baseline, limiterd-1, cluster-3) at
// each concurrency, as grouped bars with their values written above them.
//
//	go run ./bench/plot -in bench/results/summary.md -out bench/results/loadtest.png
//
// It uses only the standard library (image/png and a built-in 5x7 bitmap
// font), so it runs wherever Go does. It reads the first markdown table of
// the summary whose header has the columns "server", "c", "req/s" and
// "p99 ms", which is what bench/loadtest.sh writes.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"slices"
	"strconv"
	"strings"
)

func main() {
	in := flag.String("in", "bench/results/summary.md", "summary `file` written by bench/loadtest.sh")
	out := flag.String("out", "bench/results/loadtest.png", "PNG `file` to write")
	flag.Parse()
	if err := run(*in, *out); err != nil {
		fmt.Fprintln(os.Stderr, "plot:", err)
		os.Exit(1)
	}
}

// row is one server at one concurrency.
type row struct {
	server string
	c      int
	rps    float64
	p99    float64
}

func run(in, out string) error {
	rows, subtitle, err := readSummary(in)
	if err != nil {
		return err
	}
	img := draw(rows, subtitle)
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// readSummary returns the rows of the results table and a subtitle naming
// the machine.
func readSummary(path string) ([]row, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	var rows []row
	var col map[string]int
	subtitle := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if i := strings.Index(line, " cores"); subtitle == "" && strings.HasPrefix(line, "Run ") && i > 0 {
			subtitle = line[strings.LastIndex(line[:i], " ")+1:i] + " cores, ghz and servers on one machine"
		}
		if !strings.HasPrefix(line, "|") {
			if len(rows) > 0 {
				break
			}
			col = nil
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		switch {
		case col == nil:
			col = map[string]int{}
			for i, c := range cells {
				col[c] = i
			}
			for _, need := range []string{"server", "c", "req/s", "p99 ms"} {
				if _, ok := col[need]; !ok {
					col = nil
					break
				}
			}
			if col == nil {
				col = map[string]int{"": -1} // not our table: skip its rows
			}
		case col[""] == -1, strings.HasPrefix(cells[0], "---"):
		default:
			var r row
			r.server = cells[col["server"]]
			c, err1 := strconv.Atoi(cells[col["c"]])
			rps, err2 := strconv.ParseFloat(cells[col["req/s"]], 64)
			p99, err3 := strconv.ParseFloat(cells[col["p99 ms"]], 64)
			if err := errors.Join(err1, err2, err3); err != nil {
				return nil, "", fmt.Errorf("%s: row %q: %w", path, line, err)
			}
			r.c, r.rps, r.p99 = c, rps, p99
			rows = append(rows, r)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, "", err
	}
	if len(rows) == 0 {
		return nil, "", fmt.Errorf("%s: no table with server, c, req/s and p99 ms", path)
	}
	return rows, subtitle, nil
}

var (
	white   = color.RGBA{255, 255, 255, 255}
	black   = color.RGBA{30, 30, 30, 255}
	grey    = color.RGBA{200, 200, 200, 255}
	palette = []color.RGBA{{140, 140, 140, 255}, {31, 119, 180, 255}, {255, 127, 14, 255}, {44, 160, 44, 255}, {214, 39, 40, 255}}
)

const (
	width, height = 1100, 520
	scale         = 2 // font pixels per bitmap pixel
)

func draw(rows []row, subtitle string) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	fill(img, img.Rect, white)
	var servers []string
	var cs []int
	for _, r := range rows {
		if !slices.Contains(servers, r.server) {
			servers = append(servers, r.server)
		}
		if !slices.Contains(cs, r.c) {
			cs = append(cs, r.c)
		}
	}
	slices.Sort(cs)
	text(img, 20, 14, "limiterd load test: baseline vs limiterd", black, scale)
	if subtitle != "" {
		text(img, 20, 38, subtitle, black, 1)
	}
	// Legend, wrapped onto a second line when the servers do not fit.
	x, y := 560, 14
	for i, s := range servers {
		w := 40 + textWidth(s, scale)
		if x > 560 && x+w-20 > width-10 {
			x, y = 560, y+24
		}
		fill(img, image.Rect(x, y, x+14, y+14), palette[i%len(palette)])
		text(img, x+20, y, s, black, scale)
		x += w
	}
	panel(img, image.Rect(20, 70, width/2-10, height-20), "REQ/S (GHZ)", rows, servers, cs,
		func(r row) float64 { return r.rps }, func(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) })
	panel(img, image.Rect(width/2+10, 70, width-20, height-20), "P99 LATENCY, MS", rows, servers, cs,
		func(r row) float64 { return r.p99 }, func(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) })
	return img
}

// panel draws one bar chart inside r.
func panel(img *image.RGBA, r image.Rectangle, title string, rows []row, servers []string, cs []int,
	value func(row) float64, format func(float64) string) {
	text(img, r.Min.X, r.Min.Y, title, black, scale)
	plot := image.Rect(r.Min.X+10, r.Min.Y+50, r.Max.X-10, r.Max.Y-30)
	var top float64
	for _, rw := range rows {
		top = max(top, value(rw))
	}
	if top <= 0 {
		top = 1
	}
	top *= 1.1
	fill(img, image.Rect(plot.Min.X, plot.Max.Y, plot.Max.X, plot.Max.Y+2), black)
	for i := 1; i <= 4; i++ {
		y := plot.Max.Y - plot.Dy()*i/4
		fill(img, image.Rect(plot.Min.X, y, plot.Max.X, y+1), grey)
	}
	groupW := plot.Dx() / len(cs)
	barW := min(groupW*3/4/len(servers), 90)
	for gi, c := range cs {
		gx := plot.Min.X + gi*groupW + (groupW-barW*len(servers))/2
		label := "C=" + strconv.Itoa(c)
		text(img, plot.Min.X+gi*groupW+(groupW-textWidth(label, scale))/2, plot.Max.Y+10, label, black, scale)
		for si, s := range servers {
			i := slices.IndexFunc(rows, func(rw row) bool { return rw.server == s && rw.c == c })
			if i < 0 {
				continue
			}
			v := value(rows[i])
			h := int(v / top * float64(plot.Dy()))
			bx := gx + si*barW
			fill(img, image.Rect(bx+2, plot.Max.Y-h, bx+barW-2, plot.Max.Y), palette[si%len(palette)])
			s := format(v)
			text(img, bx+(barW-textWidth(s, 1))/2, plot.Max.Y-h-12, s, black, 1)
		}
	}
}

func fill(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	r = r.Intersect(img.Rect)
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			img.SetRGBA(x, y, c)
		}
	}
}

// text writes s with its top-left corner at (x, y), each font pixel s×s.
func text(img *image.RGBA, x, y int, s string, c color.RGBA, px int) {
	for _, ch := range strings.ToUpper(s) {
		g, ok := font[ch]
		if !ok {
			g = font['?']
		}
		for row, bits := range g {
			for col := range 5 {
				if bits&(0x10>>col) != 0 {
					fill(img, image.Rect(x+col*px, y+row*px, x+(col+1)*px, y+(row+1)*px), c)
				}
			}
		}
		x += 6 * px
	}
}

func textWidth(s string, px int) int { return len([]rune(s)) * 6 * px }

// font is a 5x7 bitmap font: seven rows, the five low bits of each, most
// significant bit leftmost. Lower case is drawn as upper case.
var font = map[rune][7]uint8{
	'0': {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}, '1': {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E},
	'2': {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}, '3': {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E},
	'4': {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}, '5': {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E},
	'6': {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}, '7': {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08},
	'8': {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}, '9': {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C},
	'A': {0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11}, 'B': {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E},
	'C': {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E}, 'D': {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C},
	'E': {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F}, 'F': {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10},
	'G': {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F}, 'H': {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11},
	'I': {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}, 'J': {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C},
	'K': {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}, 'L': {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F},
	'M': {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11}, 'N': {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11},
	'O': {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}, 'P': {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10},
	'Q': {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D}, 'R': {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11},
	'S': {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E}, 'T': {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04},
	'U': {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}, 'V': {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04},
	'W': {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A}, 'X': {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11},
	'Y': {0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04}, 'Z': {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F},
	' ': {}, '.': {0, 0, 0, 0, 0, 0x0C, 0x0C}, ',': {0, 0, 0, 0, 0x0C, 0x04, 0x08},
	'-': {0, 0, 0, 0x1F, 0, 0, 0}, '=': {0, 0, 0x1F, 0, 0x1F, 0, 0}, '+': {0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0},
	'/': {0, 0x01, 0x02, 0x04, 0x08, 0x10, 0}, ':': {0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0},
	'(': {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}, ')': {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08},
	'%': {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}, '?': {0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04},
}
