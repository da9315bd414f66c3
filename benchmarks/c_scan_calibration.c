/* Calibration for bench_kernels: one PEE extract-like scan of a 224x224 image in C, to compare with the
 * Numba kernel on the same machine:  gcc -O3 -march=native benchmarks/c_scan_calibration.c -o /tmp/cal && /tmp/cal
 * (measured here: 140-170 us across runs; kernels._rdh_jit.pee_extract: ~185 us with its extra checks). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static inline int64_t keyf(int64_t c){ int64_t t = 256 + (((c-256)>>3) > 0 ? ((c-256)>>3) : 0); int64_t k = c < t ? c : t; return k < 639 ? k : 639; }
int64_t extract(int32_t* work, int H, int W, int parity, int a, int T, int m, uint8_t* stream){
  int b=a+1; int64_t pos=0, seen=0; int bad=0;
  for(int i=1;i<H-1;i++){ int j0 = ((i+1)&1)==parity ? 1 : 2; int base=i*W;
    for(int j=j0;j<W-1;j+=2){ int k=base+j;
      int32_t vn=work[k-W], vs=work[k+W], vw=work[k-1], ve=work[k+1]; int32_t s=vn+vs+vw+ve;
      int64_t c = keyf(abs(4*vn-s)+abs(4*vs-s)+abs(4*vw-s)+abs(4*ve-s));
      int64_t member = (c < T) | ((c==T) & (seen < m)); seen += (c==T);
      int64_t y=work[k]; int64_t p=(s+2)>>2; int64_t e=y-p;
      int64_t inb = (e==b)|(e==b+1), ina=(e==a)|(e==a-1);
      int64_t bit = inb*(e-b) + ina*(a-e);
      int64_t v = y + member*(ina*bit - inb*bit - (e>b+1) + (e<a-1));
      stream[pos]=bit; pos += member & (inb|ina); bad |= (v<0)|(v>255); work[k]=v; } }
  return pos + bad;
}
int main(){ int H=224,W=224; int32_t* w=malloc(H*W*4); uint8_t* st=malloc(H*W); srand(1);
  for(int i=0;i<H*W;i++) w[i]=100 + (i%W)/8 + rand()%5;
  struct timespec t0,t1; double best=1e9; int64_t r=0;
  for(int rep=0;rep<300;rep++){ clock_gettime(CLOCK_MONOTONIC,&t0); r+=extract(w,H,W,0,-1,50,100,st); clock_gettime(CLOCK_MONOTONIC,&t1);
    double us=(t1.tv_sec-t0.tv_sec)*1e6+(t1.tv_nsec-t0.tv_nsec)/1e3; if(us<best)best=us; }
  printf("C extract-like loop: %.1f us (r=%ld)\n", best, (long)r); return 0; }
